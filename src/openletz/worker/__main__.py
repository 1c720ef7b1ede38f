from openletz.worker.embedded import main

main()
