from fastredir.cli import main

raise SystemExit(main())
