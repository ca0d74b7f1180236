// `{{name}}`: sets `greeting` from `name` (default "world").

import { processor, validation } from './weir.js';

export const handler = processor(
  { name: '{{name}}', version: '0.1.0', description: 'Greets `name`.', limits: { timeoutMs: 5000 } },
  (state, ctx) => {
    const name = state.name ?? 'world';
    if (typeof name !== 'string' || name.trim() === '') {
      throw validation('`name` must be a non-blank string', 'blank-name');
    }
    ctx.info('greeting');
    return { greeting: `Hello, ${name}!` };
  },
);
