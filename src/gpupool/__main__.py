"""`python -m gpupool` runs the CLI (the local network starts its processes this way)."""

from gpupool.cli.app import main

if __name__ == "__main__":
    main()
