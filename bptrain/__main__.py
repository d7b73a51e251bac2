from bptrain.app.cli import main

main()
