"""One page per job of the appliance; the main window's navigation lists them in this order."""
