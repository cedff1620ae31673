from deeplab_trt.cli import main

raise SystemExit(main())
