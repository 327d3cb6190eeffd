# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The models a node serves: one from today's parameters, or several (`models`) under one budget.

Each camera belongs to one `ServedModel`: the service its frames run through, the settings
they run with (the node's, with the model's own `<name>.*` over them), its diagnostics and
whether its deadline is feasible. The node's one inference thread serves the models' frames,
their cameras in turn (`service.serving.FrameServer`, which reads and updates these fields).
"""

from demand_layering_ros.ros import params
from demand_layering_ros.ros.diagnostics import Diagnostics
from demand_layering_ros.service import settings


class ServedModel:
    """One model of the node: its service, its settings, its diagnostics and deadline state."""

    def __init__(self, name, service):
        """Serve model `name` ('' for the one model of today's parameters) with `service`."""
        self.name = name
        self.service = service
        self.settings = {}
        self.diagnostics = Diagnostics()
        self.infeasible = False
        self.infeasible_said = False
        self.served = 0

    @property
    def label(self):
        """Return the model's name in diagnostics: 'model', or 'model NAME' of several."""
        return f'model {self.name}' if self.name else 'model'

    def update(self, values):
        """Take the node's settings: the model's own `<name>.*` over the node's."""
        self.settings = settings.model_values(values, self.name) if self.name else \
            {k: v for k, v in values.items() if '.' not in k}


def declare_models(node, names):
    """Declare `<name>.<key>` for every model name not declared yet (at their defaults)."""
    for name in names:
        for p in settings.model_params(name):
            if not node.has_parameter(p.name):
                node.declare_parameter(p.name, p.default, params.descriptor(p))


def parameter_names(node):
    """Return the names of the node's settings: the table's and each model's `<name>.*`."""
    names = [p.name for p in settings.PARAMS]
    for model in params.plain(node.get_parameter('models').value) or []:
        names += [p.name for p in settings.model_params(model) if node.has_parameter(p.name)]
    return names


def claim_namespace(owners, ns, topic, model):
    """
    Note that camera namespace `ns` is model `model`'s (`owners`: ns -> (model, topic)).

    ValueError when it is claimed twice: a topic of two models is refused as such, two topics
    in one namespace as today (their detections would share `<ns>/detections`).
    """
    key = f'{model}.image_topics' if model else 'image_topics'
    if ns in owners:
        other, other_topic = owners[ns]
        if other != model and topic == other_topic:
            raise ValueError(f'{key}: {topic} is also a topic of model {other}; a camera '
                             'belongs to one model')
        raise ValueError(f'{key}: {topic} and {other_topic} are both in namespace '
                         f'{ns or "/"}; their detections would share {ns}/detections')
    owners[ns] = (model, topic)
