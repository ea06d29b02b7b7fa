from .ratequote import main

raise SystemExit(main())
