from .confwatch import main

raise SystemExit(main())
