"""``python -m corsproxy.echo``: the demo's echo upstream (``corsproxy.tools.echo``), kept at
this name because docker-compose.yml and the README start it so."""

from corsproxy.tools.echo import main, start_echo

__all__ = ["main", "start_echo"]

if __name__ == "__main__":
    raise SystemExit(main())
