"""The population trainer: P independent runs (any mix of method, seed and learning rate) trained as
one batched computation.

- `orders`: data-order groups (members with one seed share every batch) and their blocks;
- `feedback`: every member's B and its rule's hooks (soap.rules), one object;
- `step_rules`: members sending their method's direction at another rule's per-layer sizes;
- `model`: the stacked forward and the hand-written backward (PopulationMLP);
- `conv_model`: the same for LeNet-5 (PopulationLeNet, train.architecture lenet5);
- `placement`: one stacked model, or one per step shape (PopulationGroups, population_model, which
  picks the model by architecture);
- `loop`: train_population, the training loop;
- `records`: the runs and curves tables, run ids, the meta record.
"""

from soap.population.feedback import PopulationFeedback, SignalPath
from soap.population.loop import load_splits, train_population
from soap.population.conv_model import PopulationLeNet
from soap.population.model import PopulationMLP
from soap.population.orders import by_data_order
from soap.population.placement import PopulationGroups, population_model
from soap.population.records import TrainResult, run_id, versions

__all__ = ["PopulationFeedback", "PopulationGroups", "PopulationLeNet", "PopulationMLP", "SignalPath", "TrainResult",
           "by_data_order", "load_splits", "population_model", "run_id", "train_population", "versions"]
