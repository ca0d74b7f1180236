// `validate-json`: checks `state.document` against `state.schema`, a subset of JSON Schema:
// `type` (a name or a list of names), `enum`, `const`, `required`, `properties`,
// `additionalProperties` (a boolean or a schema), `items`, `minItems`, `maxItems`,
// `minLength`, `maxLength`, `pattern`, `minimum`, `maximum`. Sets `valid` and `errors`
// (each `{path, message}`, the path a JSON pointer into the document).

import { processor, validation } from './weir.js';

const TYPES = ['object', 'array', 'string', 'number', 'integer', 'boolean', 'null'];

function typeOf(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

function hasType(value, type) {
  switch (type) {
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number';
    default:
      return typeOf(value) === type;
  }
}

function pointer(path, key) {
  return `${path}/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`;
}

function equal(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function check(schema, value, path, errors) {
  if (schema === true || schema === undefined) return;
  if (schema === false) {
    errors.push({ path, message: 'no value is allowed here' });
    return;
  }
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
    throw validation(`the schema at ${path || '/'} must be an object or a boolean`, 'invalid-schema');
  }
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    for (const t of types) {
      if (!TYPES.includes(t)) throw validation(`unknown type \`${t}\` in the schema`, 'invalid-schema');
    }
    if (!types.some((t) => hasType(value, t))) {
      errors.push({ path, message: `expected ${types.join(' or ')}, found ${typeOf(value)}` });
      return;
    }
  }
  if (schema.enum !== undefined && !schema.enum.some((v) => equal(v, value))) {
    errors.push({ path, message: `must be one of ${JSON.stringify(schema.enum)}` });
  }
  if (schema.const !== undefined && !equal(schema.const, value)) {
    errors.push({ path, message: `must equal ${JSON.stringify(schema.const)}` });
  }
  if (typeof value === 'string') {
    const length = [...value].length;
    if (schema.minLength !== undefined && length < schema.minLength) {
      errors.push({ path, message: `must have at least ${schema.minLength} characters` });
    }
    if (schema.maxLength !== undefined && length > schema.maxLength) {
      errors.push({ path, message: `must have at most ${schema.maxLength} characters` });
    }
    if (schema.pattern !== undefined) {
      let re;
      try {
        re = new RegExp(schema.pattern, 'u');
      } catch (e) {
        throw validation(`invalid pattern ${JSON.stringify(schema.pattern)}: ${e.message}`, 'invalid-schema');
      }
      if (!re.test(value)) errors.push({ path, message: `must match ${schema.pattern}` });
    }
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) {
      errors.push({ path, message: `must be at least ${schema.minimum}` });
    }
    if (schema.maximum !== undefined && value > schema.maximum) {
      errors.push({ path, message: `must be at most ${schema.maximum}` });
    }
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) {
      errors.push({ path, message: `must have at least ${schema.minItems} items` });
    }
    if (schema.maxItems !== undefined && value.length > schema.maxItems) {
      errors.push({ path, message: `must have at most ${schema.maxItems} items` });
    }
    if (schema.items !== undefined) {
      value.forEach((item, i) => check(schema.items, item, pointer(path, i), errors));
    }
  }
  if (typeOf(value) === 'object') {
    for (const key of schema.required ?? []) {
      if (!Object.hasOwn(value, key)) errors.push({ path, message: `missing required property \`${key}\`` });
    }
    const properties = schema.properties ?? {};
    for (const [key, item] of Object.entries(value)) {
      if (Object.hasOwn(properties, key)) {
        check(properties[key], item, pointer(path, key), errors);
      } else if (schema.additionalProperties === false) {
        errors.push({ path: pointer(path, key), message: 'additional property is not allowed' });
      } else if (typeof schema.additionalProperties === 'object') {
        check(schema.additionalProperties, item, pointer(path, key), errors);
      }
    }
  }
}

export const handler = processor(
  {
    name: 'validate-json',
    version: '0.1.0',
    description: 'Checks `document` against `schema` (a JSON Schema subset) and lists the errors.',
    limits: { timeoutMs: 5000 },
  },
  (state, ctx) => {
    if (!Object.hasOwn(state, 'schema')) throw validation('`schema` is missing', 'missing-schema');
    if (!Object.hasOwn(state, 'document')) throw validation('`document` is missing', 'missing-document');
    const errors = [];
    check(state.schema, state.document, '', errors);
    ctx.info('validated', { errors: errors.length });
    return { valid: errors.length === 0, errors };
  },
);
