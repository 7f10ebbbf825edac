from vidaccel_train.models.zoo import ZOO, create_model, list_models, load_weights, read_state_dict

__all__ = ["ZOO", "create_model", "list_models", "load_weights", "read_state_dict"]
