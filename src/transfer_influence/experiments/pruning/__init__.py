"""Counterfactual pruning: pretrain again without the least helpful (or most helpful, or
random) source groups and measure the target honestly (ranked and k chosen on validation,
reported on test)."""

from .conditions import RULES, Condition, plan_conditions, user_condition
from .experiment import Pruning, test_companion

__all__ = ["RULES", "Condition", "Pruning", "plan_conditions", "test_companion", "user_condition"]
