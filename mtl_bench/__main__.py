from mtl_bench.cli import main

raise SystemExit(main())
