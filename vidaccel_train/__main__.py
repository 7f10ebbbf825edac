from vidaccel_train.train import main

main()
