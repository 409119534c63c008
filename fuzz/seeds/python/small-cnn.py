Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=range(3), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])
