from reranker_nvidia.cli import main

raise SystemExit(main())
