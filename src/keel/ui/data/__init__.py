"""What each page of the console shows, gathered from the project: one module per page, each
a function of the console's state that reads (never writes) and returns what the page's
template renders. They block on the log and the registry: pages call them off the event
loop."""
