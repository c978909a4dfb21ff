from services.auth.server import main

main()
