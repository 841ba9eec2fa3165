"""Model definitions, weight resolution, preprocessing and the model registry.

Everything a scoring or training run needs to know about a model lives here:
how to build the module, where its trained weights come from (and their digest),
how to turn an image into the model's input tensor, and which intermediate layers
can be exported as feature vectors. Nothing here imports Prefect.

Entry points: :func:`models.registry.get_model_spec` and
:func:`models.registry.load_model`.
"""
