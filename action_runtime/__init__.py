"""The action runtime: the process inside each container (OpenWhisk action protocol, Knative contract)."""
