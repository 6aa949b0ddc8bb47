from gluon_tricks.cli import main

raise SystemExit(main())
