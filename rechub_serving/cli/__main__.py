"""``python -m rechub_serving.cli``: the same as the ``rechub-index`` console script."""

from . import main

if __name__ == "__main__":
    main()
