from gui.app import main

main()
