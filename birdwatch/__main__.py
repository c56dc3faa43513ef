from birdwatch.cli import main

raise SystemExit(main())
