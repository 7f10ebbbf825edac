import warnings

# PyTorchVideo scripts a helper at import time; the deprecation is theirs, not something to act on.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script. is deprecated", category=FutureWarning)

from vidaccel_train.train import main  # noqa: E402

if __name__ == "__main__":
    main()
