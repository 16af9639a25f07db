"""Analysis of trained models: which image cells each expert's router picks (`expert_cells`), per class
(`pick_frequency`), drawn as a grid of examples and heat maps (`draw_routing_grid`)."""
from pmoe.analysis.cells import ExpertCells, expert_cells
from pmoe.analysis.routing_grid import draw_routing_grid, examples_per_class, layer_index, layer_mask, pick_frequency

__all__ = ["ExpertCells", "draw_routing_grid", "examples_per_class", "expert_cells", "layer_index", "layer_mask",
           "pick_frequency"]
