NAS = genotypes.Genotype([('tanh', 0), ("relu", 1),], list(range(1, 3)))  # positional
