"""papo.utils: resolvers, logging helpers, run wrappers."""

from papo.utils.resolvers import register_resolvers

register_resolvers()
