const chunks = [];
for (let i = 0; i < 10 * 1024; i++) chunks.push(Buffer.alloc(1024 * 1024, 1));
process.exit(0);
