"""The Kubernetes runtime: the objects per database (`builders`), the API client with its declared
permissions (`client`, `permissions`), list-then-watch caches (`informer`), leader election
(`leader`), the ServerlessDatabase store (`store`) and the runtime itself (`runtime`)."""
