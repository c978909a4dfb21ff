from services.document.server import main

main()
