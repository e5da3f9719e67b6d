const line = 'x'.repeat(1023) + '\n';
for (;;) process.stdout.write(line);
