"""Static, offline HTML views of a run: a whole-run site (`build_site`) and notebook objects (`neuron`).

Every page works from file:// with the network off: one CSS and one JS file, shipped with the package,
and the data as JSON inside the page (or in `<script>`-loaded data files). All reading goes through
`neuron_explainer.view.data`.
"""

from neuron_explainer.view.notebook import HtmlView, NeuronView, neuron
from neuron_explainer.view.site import SiteReport, build_site

__all__ = ["HtmlView", "NeuronView", "SiteReport", "build_site", "neuron"]
