"""An app with no tasks module: autodiscovery passes it by."""
