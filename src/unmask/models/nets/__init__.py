"""Network architectures as plain torch modules, free of the estimator code that trains them."""
