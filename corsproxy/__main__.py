from corsproxy.tools.cli import main

# Guarded: worker processes are spawned by re-importing this module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
