from decar.cli import main

main()
