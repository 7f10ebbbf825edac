from vidaccel_train.models.zoo import ZOO, CheckpointError, create_model, list_models, load_weights, read_state_dict

__all__ = ["ZOO", "CheckpointError", "create_model", "list_models", "load_weights", "read_state_dict"]
