x = bytearray(10 * 1024 ** 3)
for i in range(0, len(x), 4096):
    x[i] = 1
