Genotype(recurrent=[('identity', 0), ('relu', 0), ('identity', 0), ('relu', 0), ('identity', 1), ('identity', 0), ('identity', 0), ('identity', 2)], concat=range(1, 9))
