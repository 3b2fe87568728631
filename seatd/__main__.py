from seatd.cli import main

raise SystemExit(main())
