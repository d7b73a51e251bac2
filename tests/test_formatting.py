"""bptrain/formatting.py: the one number formatter."""
from bptrain.formatting import fmt, format_number, format_value, pct, short_number


def test_numbers_for_people():
    assert [format_number(v) for v in (2.5e7, 1.234e-4, 0.59341, 12, 0)] == [
        "2.5e+07", "1.23e-04", "0.593", "12", "0"]
    assert fmt(None) == "-" and fmt(0.10791) == "0.1079" and fmt(float("nan")) == "nan"
    assert pct(0.98056) == "98.06%" and pct(None) == "-"
    assert [short_number(v) for v in (0.05, 1e-4, 2.5e7, 123.456)] == ["0.05", "1e-4", "2.5e7",
                                                                      "123.5"]
    assert format_value([64, 32]) == "64x32" and format_value(True) == "true"
    assert format_value({"flip": True, "crop_pad": 4}) == "flip=true,crop_pad=4"
