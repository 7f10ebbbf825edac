import sys

from vidaccel_train.train import check_override_syntax, main

if __name__ == "__main__":
    check_override_syntax(sys.argv[1:])
    main()
