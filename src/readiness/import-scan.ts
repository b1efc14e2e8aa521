import ts from 'typescript';

export interface ImportRef {
  specifier: string;
  line: number;
  /** Erased at compile time (`import type`, `export type`, type-only specifiers, `import('x').T` types). */
  typeOnly: boolean;
}

export interface ScannedFile {
  imports: ImportRef[];
  /** Lines that read `process.env` (property access, element access, destructuring, or `env` from node:process). */
  envReads: number[];
  /** Non-blank lines that are not only comments. */
  codeLines: number;
  classes: number;
}

const PROCESS_MODULES = new Set(['process', 'node:process']);

/** Parses one TypeScript file with the compiler's parser (no type checking, no resolution). */
export function scanSource(fileName: string, text: string): ScannedFile {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const lineOf = (node: ts.Node) => sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
  const out: ScannedFile = { imports: [], envReads: [], codeLines: countCodeLines(sf), classes: 0 };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      out.imports.push({ specifier: node.moduleSpecifier.text, line: lineOf(node), typeOnly: isTypeOnlyImport(node) });
      if (PROCESS_MODULES.has(node.moduleSpecifier.text) && importsEnv(node)) out.envReads.push(lineOf(node));
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      const typeOnly = node.isTypeOnly || (!!node.exportClause && ts.isNamedExports(node.exportClause) && node.exportClause.elements.every((e) => e.isTypeOnly));
      out.imports.push({ specifier: node.moduleSpecifier.text, line: lineOf(node), typeOnly });
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0];
      if (arg && ts.isStringLiteralLike(arg)) out.imports.push({ specifier: arg.text, line: lineOf(node), typeOnly: false });
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      out.imports.push({ specifier: node.argument.literal.text, line: lineOf(node), typeOnly: true });
    } else if (isEnvRead(node)) {
      out.envReads.push(lineOf(node));
    } else if (ts.isClassDeclaration(node) || ts.isClassExpression(node)) {
      out.classes++;
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

function isTypeOnlyImport(node: ts.ImportDeclaration): boolean {
  const clause = node.importClause;
  if (!clause) return false; // side-effect import
  if (clause.isTypeOnly) return true;
  if (clause.name) return false;
  const named = clause.namedBindings;
  return !!named && ts.isNamedImports(named) && named.elements.length > 0 && named.elements.every((e) => e.isTypeOnly);
}

function importsEnv(node: ts.ImportDeclaration): boolean {
  const named = node.importClause?.namedBindings;
  return !!named && ts.isNamedImports(named) && named.elements.some((e) => (e.propertyName ?? e.name).text === 'env');
}

const isProcess = (e: ts.Expression) => ts.isIdentifier(e) && e.text === 'process';

function isEnvRead(node: ts.Node): boolean {
  if (ts.isPropertyAccessExpression(node)) return isProcess(node.expression) && node.name.text === 'env';
  if (ts.isElementAccessExpression(node)) {
    return isProcess(node.expression) && ts.isStringLiteralLike(node.argumentExpression) && node.argumentExpression.text === 'env';
  }
  if (ts.isVariableDeclaration(node) && node.initializer && isProcess(node.initializer) && ts.isObjectBindingPattern(node.name)) {
    return node.name.elements.some((e) => ((e.propertyName ?? e.name) as ts.Identifier).text === 'env');
  }
  return false;
}

function countCodeLines(sf: ts.SourceFile): number {
  const code = new Set<number>();
  // Tokens are the leaves of the full syntax tree (getChildren includes them); comments are trivia, JSDoc is skipped.
  const mark = (node: ts.Node): void => {
    if (ts.isJSDoc(node)) return;
    const children = node.getChildren(sf);
    if (children.length === 0 && node.kind !== ts.SyntaxKind.EndOfFileToken) {
      const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const end = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      for (let l = start; l <= end; l++) code.add(l);
    }
    for (const c of children) mark(c);
  };
  mark(sf);
  return code.size;
}
