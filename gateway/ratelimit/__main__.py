from gateway.ratelimit.server import main

main()
