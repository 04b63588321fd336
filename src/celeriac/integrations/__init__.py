"""What celeriac does for frameworks its users run it beside (Django)."""
