"""Context tools: the functions a context declares (`tools:`), run by the runtime when the model calls them.

`http.py`, `mcp.py` and `builtin.py` are the three kinds; `toolset.py` builds a context's tools and runs a step's
calls; `loop.py` is the loop between the model and them; `telemetry.py` what operators see of each call.
Nothing here knows HTTP requests to the runtime: `app.web` only shows the calls made.
"""

from app.tools.loop import Inputs, ToolRun
from app.tools.toolset import Toolbox

__all__ = ["Inputs", "ToolRun", "Toolbox"]
