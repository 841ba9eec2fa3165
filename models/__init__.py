"""Model definitions, weight resolution, preprocessing and the model registry.

Everything a scoring or training run needs to know about a model lives here:
how to build the module, where its trained weights come from (and their digest),
how to turn an image into the model's input tensor, which intermediate layers
can be exported as feature vectors, and how training starts it. Nothing here
imports Prefect.

Each model's file registers its own spec(s) (``register(ModelSpec(...))``, as
timm's model files do); importing this package imports the model files below, so
asking the registry for a name always finds every model. To add a model: write
``models/<name>.py`` and add one import line here.

Entry points: :func:`memscore.models.registry.get_model_spec`,
:func:`memscore.models.registry.load_model` and
:func:`memscore.models.registry.trainable_model`.
"""

from memscore.models import resmem  # noqa: F401  (registers resmem, resmem-retrain)
from memscore.models import memnet  # noqa: F401  (registers memnet-baseline)
from memscore.models import m3m  # noqa: F401  (registers m3m, m3m-deeplabv3)
from memscore.models import falseresmem  # noqa: F401  (registers falseresmem)
from memscore.models import vitmem  # noqa: F401  (registers vitmem)
from memscore.models import aim  # noqa: F401  (registers resmem-retrain-aim, aim-resnet18, resnet18-nomem)
