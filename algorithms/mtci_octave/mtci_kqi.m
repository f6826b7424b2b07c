function result = mtci_kqi(vol, meta, params, outdir)
% MTCI_KQI  Maximum tissue contrast index per B-scan (Huang et al., IOVS 2012;53:2133).
%   The same definition as algorithms/mtci (Python), written for GNU Octave /
%   MATLAB as the reference example of the "octave" runtime:
%   200 equal-width bins between the B-scan's min and max; N1 = centre of the
%   modal bin; N1s = centre of the first bin reaching 95 % of the peak;
%   cN1s = F(N1s); cN2 = 0.999 cN1s / cN1B; N2 = F^-1(cN2); N3 = F^-1(0.999);
%   mTCI = (N3 - N1) / (N2 - N1). vol is [depth, ascans, bscans].
  cn1b = device_constant(meta, params);
  nb = size(vol, 3);
  per = nan(1, nb);
  notes = {};
  for b = 1:nb
    x = vol(:, :, b);
    x = x(isfinite(x));
    per(b) = mtci_bscan(x(:), cn1b);
  end
  if any(isnan(per))
    notes{end + 1} = sprintf('mTCI undefined for %d B-scan(s)', sum(isnan(per)));
  end
  ok = per(~isnan(per));
  if isempty(ok)
    value = NaN; worst = NaN;
  else
    value = median(ok); worst = min(ok);
  end
  result.kqis.mtci = struct('value', value, 'unit', '1');
  result.kqis.mtci.per_bscan = per;
  result.kqis.mtci_min = struct('value', worst, 'unit', '1');
  result.notes = notes;
end

function cn1b = device_constant(meta, params)
  if isfield(params, 'cN1B') && ~isempty(params.cN1B)
    cn1b = params.cN1B;
    return
  end
  device = '';
  if isfield(meta, 'device') && ischar(meta.device)
    device = lower(meta.device);
  end
  keys = {'cirrus', 'zeiss', 'rtvue', 'optovue', 'spectralis', 'heidelberg', '3d-oct-1000', 'topcon'};
  vals = [0.40, 0.40, 0.55, 0.55, 0.45, 0.45, 0.50, 0.50];
  cn1b = 0.45;
  for i = 1:numel(keys)
    if ~isempty(strfind(device, keys{i}))
      cn1b = vals(i);
      return
    end
  end
end

function v = mtci_bscan(x, cn1b)
  v = NaN;
  n = numel(x);
  if n == 0
    return
  end
  lo = min(x); hi = max(x);
  if hi <= lo
    return
  end
  nbins = 200;
  edges = linspace(lo, hi, nbins + 1);
  counts = histc(x, edges);
  counts(end - 1) = counts(end - 1) + counts(end);  % the last bin includes its right edge
  counts = counts(1:end - 1);
  centres = (edges(1:end - 1) + edges(2:end)) / 2;
  [peak, i1] = max(counts);
  n1 = centres(i1);
  i1s = find(counts >= 0.95 * peak, 1);
  n1s = centres(i1s);
  cn1s = sum(x <= n1s) / n;
  cn2 = 0.999 * cn1s / cn1b;
  if cn2 > 1
    return
  end
  xs = sort(x);
  n2 = xs(max(1, ceil(cn2 * n - 1e-9)));
  n3 = xs(max(1, ceil(0.999 * n - 1e-9)));
  if n2 <= n1
    return
  end
  v = (n3 - n1) / (n2 - n1);
end
