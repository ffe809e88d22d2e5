"""Static, offline HTML views: a whole-run site (`build_site`), notebook objects (`neuron`), views of one prompt.

Every page works from file:// with the network off: one CSS and one JS file, shipped with the package,
and the data as JSON inside the page (or in `<script>`-loaded data files). All reading goes through
`neuron_explainer.view.data`.
"""

from neuron_explainer.view.inspect_page import InspectPage, inspect_page
from neuron_explainer.view.notebook import HtmlView, NeuronView, neuron
from neuron_explainer.view.prompt_views import (
    AttentionView,
    FactorsView,
    FiringView,
    LogitLensView,
    PromptView,
    QueryKeyView,
    RankingsView,
    SaliencyView,
)
from neuron_explainer.view.site import SiteReport, build_site

__all__ = [
    "AttentionView",
    "FactorsView",
    "FiringView",
    "HtmlView",
    "InspectPage",
    "LogitLensView",
    "NeuronView",
    "PromptView",
    "QueryKeyView",
    "RankingsView",
    "SaliencyView",
    "SiteReport",
    "build_site",
    "inspect_page",
    "neuron",
]
