from bptrain.cli import main

main()
